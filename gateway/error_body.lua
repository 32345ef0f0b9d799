-- Rewrites the transcoder's gRPC error body {"code":3,"message":"...","details":[]}
-- into the public shape {"success":false,"message":"...","code":"INVALID_ARGUMENT"}.
-- Native gRPC responses (application/grpc) and successes pass untouched.

local CODE_NAMES = {
  [1] = "CANCELLED", [2] = "UNKNOWN", [3] = "INVALID_ARGUMENT", [4] = "DEADLINE_EXCEEDED",
  [5] = "NOT_FOUND", [6] = "ALREADY_EXISTS", [7] = "PERMISSION_DENIED", [8] = "RESOURCE_EXHAUSTED",
  [9] = "FAILED_PRECONDITION", [10] = "ABORTED", [11] = "OUT_OF_RANGE", [12] = "UNIMPLEMENTED",
  [13] = "INTERNAL", [14] = "UNAVAILABLE", [15] = "DATA_LOSS", [16] = "UNAUTHENTICATED",
}

-- Envoy maps FAILED_PRECONDITION to 400; the state of the resource, not the request, is wrong (e.g. a cancel of a
-- finished task): 409 Conflict.
local HTTP_STATUS_OVERRIDES = {[9] = "409"}

-- A google.rpc.ErrorInfo reason in the details that has a code and status of its own: a create short of credit
-- (FAILED_PRECONDITION in gRPC) is 402 PAYMENT_REQUIRED.
local REASONS = {PAYMENT_REQUIRED = "402"}

-- Returns the raw (still JSON-escaped) contents of the string value of `key`.
local function json_string_field(body, key)
  local start = string.find(body, '"' .. key .. '":"', 1, true)
  if start == nil then
    return ""
  end
  local i = start + string.len(key) + 4
  local first = i
  while i <= string.len(body) do
    local c = string.sub(body, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return string.sub(body, first, i - 1)
    else
      i = i + 1
    end
  end
  return ""
end

function envoy_on_response(response_handle)
  local status = tonumber(response_handle:headers():get(":status"))
  local content_type = response_handle:headers():get("content-type") or ""
  if status == nil or status < 400 or string.find(content_type, "application/json", 1, true) ~= 1 then
    return
  end
  local body = response_handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  if string.find(text, '"success"', 1, true) ~= nil then
    return -- already in the public shape (an Envoy local reply)
  end
  local code = tonumber(string.match(text, '"code":(%d+)'))
  if code == nil then
    return
  end
  local name = CODE_NAMES[code] or "UNKNOWN"
  local http_status = HTTP_STATUS_OVERRIDES[code]
  local reason = json_string_field(text, "reason")
  if REASONS[reason] ~= nil then
    name = reason
    http_status = REASONS[reason]
  end
  local rewritten = '{"success":false,"message":"' .. json_string_field(text, "message") ..
    '","code":"' .. name .. '"}'
  body:setBytes(rewritten)
  response_handle:headers():replace("content-length", tostring(string.len(rewritten)))
  if http_status ~= nil then
    response_handle:headers():replace(":status", http_status)
  end
end
