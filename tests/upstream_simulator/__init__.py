"""Tests of the upstream simulator, driven through the real vendor SDKs."""
