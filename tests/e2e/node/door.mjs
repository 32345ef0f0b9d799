// The official OpenAI Node SDK, unmodified, against aitask's OpenAI-compatible door: images, chat (plain and
// streamed), models and videos. Prints what it got as one JSON object; tests/e2e/test_openai_node_sdk.py checks it.
//   AITASK_BASE_URL=http://127.0.0.1:8080/v1 AITASK_API_KEY=ak_... node door.mjs
import { createHash } from "node:crypto";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.AITASK_BASE_URL, apiKey: process.env.AITASK_API_KEY, maxRetries: 0 });

const asUrl = await client.images.generate({
  model: "doubao-seedream-3-0-t2i-250415", prompt: "a red fox in the snow", size: "1024x1024", response_format: "url",
});
const asBase64 = await client.images.generate({
  model: "jimeng_high_aes_general_v21_L", prompt: "a red fox in the rain", size: "512x512", response_format: "b64_json",
});
const completion = await client.chat.completions.create({
  model: "gpt-4", messages: [{ role: "user", content: "Say hello." }], max_tokens: 50,
});
let streamed = "";
let lastFinishReason = null;
const stream = await client.chat.completions.create({
  model: "doubao-pro-4k", messages: [{ role: "user", content: "Say hello." }], stream: true,
});
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  lastFinishReason = chunk.choices[0]?.finish_reason ?? lastFinishReason;
}
const models = [];
for await (const model of client.models.list()) models.push(model.id);

let video = await client.videos.create({ model: "jimeng_vgfm_t2v_l20", prompt: "waves on a pier", size: "720x1280" });
const createdStatus = video.status;
while (video.status === "queued" || video.status === "in_progress") {
  await new Promise((resolve) => setTimeout(resolve, 500));
  video = await client.videos.retrieve(video.id);
}
const content = Buffer.from(await (await client.videos.downloadContent(video.id)).arrayBuffer());

let notFound = null;
try {
  await client.images.generate({ model: "no-such-model", prompt: "p" });
} catch (error) {
  notFound = { name: error.constructor.name, status: error.status, code: error.code };
}

console.log(JSON.stringify({
  image_url: asUrl.data[0].url,
  image_b64_length: asBase64.data[0].b64_json.length,
  chat_id: completion.id,
  chat_text: completion.choices[0].message.content,
  chat_total_tokens: completion.usage.total_tokens,
  streamed,
  last_finish_reason: lastFinishReason,
  models,
  video: { id: video.id, created_status: createdStatus, status: video.status, size: video.size },
  video_sha256: createHash("sha256").update(content).digest("hex"),
  not_found: notFound,
}));
