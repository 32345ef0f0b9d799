"""Volcengine provider: Ark (Doubao images and chat) and the visual API (Jimeng images and video)."""
