-- Refuses a JSON body that names a field its request message does not have (the transcoder drops
-- such fields silently, so a typo like "sise" would fall back to the default size unnoticed).
-- gateway/config.py prepends BODY_FIELDS: per REST path pattern, the message's field names (proto
-- and JSON spellings) and the proto names to suggest from. Only top-level keys are checked. A body
-- that is not a JSON object is left to the transcoder, which answers its own 400.

local function skip_space(text, i)
  return string.find(text, "[^ \t\r\n]", i) or (string.len(text) + 1)
end

-- Index just past the JSON string that opens at i (a quote), or nil if it never closes.
local function string_end(text, i)
  i = i + 1
  while i <= string.len(text) do
    local c = string.sub(text, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return i + 1
    else
      i = i + 1
    end
  end
  return nil
end

-- Index just past the JSON value that starts at i, or nil if the text ends first.
local function value_end(text, i)
  local depth = 0
  while i <= string.len(text) do
    local c = string.sub(text, i, i)
    if c == '"' then
      i = string_end(text, i)
      if i == nil then
        return nil
      end
      if depth == 0 then
        return i
      end
    else
      if c == "{" or c == "[" then
        depth = depth + 1
      elseif c == "}" or c == "]" then
        if depth == 0 then
          return i -- the end of the enclosing object
        end
        depth = depth - 1
        if depth == 0 then
          return i + 1
        end
      elseif depth == 0 and c == "," then
        return i
      end
      i = i + 1
    end
  end
  return nil
end

-- The top-level keys of a JSON object, raw (escapes left as they are); nil if it is not one.
local function top_level_keys(text)
  local keys = {}
  local i = skip_space(text, 1)
  if string.sub(text, i, i) ~= "{" then
    return nil
  end
  i = skip_space(text, i + 1)
  while string.sub(text, i, i) == '"' do
    local after = string_end(text, i)
    if after == nil then
      return nil
    end
    keys[#keys + 1] = string.sub(text, i + 1, after - 2)
    i = skip_space(text, after)
    if string.sub(text, i, i) ~= ":" then
      return nil
    end
    i = value_end(text, skip_space(text, i + 1))
    if i == nil then
      return nil
    end
    i = skip_space(text, i)
    if string.sub(text, i, i) == "," then
      i = skip_space(text, i + 1)
    end
  end
  return keys
end

-- Levenshtein distance, for "did you mean".
local function distance(a, b)
  local previous = {}
  for j = 0, string.len(b) do
    previous[j] = j
  end
  for i = 1, string.len(a) do
    local current = { [0] = i }
    for j = 1, string.len(b) do
      local cost = (string.sub(a, i, i) == string.sub(b, j, j)) and 0 or 1
      current[j] = math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
    end
    previous = current
  end
  return previous[string.len(b)]
end

local function closest(name, candidates)
  local lowered = string.lower(name)
  local best, best_distance = nil, math.max(2, math.floor(string.len(name) / 3))
  for _, candidate in ipairs(candidates) do
    local d = distance(lowered, candidate)
    if d <= best_distance then
      best, best_distance = candidate, d
    end
  end
  return best
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/grpc", 1, true) == 1 then
    return
  end
  local path = string.gsub(headers:get(":path") or "", "%?.*", "")
  local route = nil
  for _, candidate in ipairs(BODY_FIELDS) do
    if headers:get(":method") == candidate.method and string.match(path, candidate.pattern) then
      route = candidate
      break
    end
  end
  if route == nil then
    return
  end
  local body = request_handle:body()
  if body == nil then
    return
  end
  local keys = top_level_keys(body:getBytes(0, body:length()))
  if keys == nil then
    return
  end
  for _, key in ipairs(keys) do
    -- A key with escapes is left to the transcoder, which decodes it.
    if not route.fields[key] and string.find(key, "\\", 1, true) == nil then
      -- "<field>: ..." like every other bad-input message.
      local message = key .. ": unknown field"
      local suggestion = closest(key, route.names)
      if suggestion ~= nil then
        message = message .. ", did you mean '" .. suggestion .. "'?"
      else
        message = message .. " (fields: " .. table.concat(route.names, ", ") .. ")"
      end
      -- A plain-text local reply: the local_reply_config mapper for 400 wraps it in the public envelope.
      request_handle:respond({ [":status"] = "400", ["content-type"] = "text/plain" }, message)
      return
    end
  end
end
