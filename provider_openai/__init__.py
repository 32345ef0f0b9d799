"""OpenAI provider: images, chat completions and videos through the official `openai` SDK."""
