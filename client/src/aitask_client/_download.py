"""Writing a task's output to a file: streamed from its link, checked against the SHA-256 the gateway recorded."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from aitask_client._core import Connection
from aitask_client.errors import AitaskError, OutputMismatch, Unavailable
from aitask_client.types import Task

CHUNK = 1 << 16
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "video/mp4": ".mp4"}


def download(task: Task, path: str | os.PathLike[str], connection: Connection) -> Path:
    """Write the output of `task` (final) to `path`, or into it when it is a directory; return the file's path.

    The file appears whole or not at all (a temporary file renamed).
    """
    link = connection.absolute(task.url)
    target = Path(path)
    if task.status != "completed":
        raise AitaskError(f"task {task.id} is {task.status}: it has no output to download", "NO_OUTPUT")
    if task.text:
        return _write(_into(target, task, ".txt"), [task.text.encode()], "")
    if task.image_base64:
        image = base64.b64decode(task.image_base64)
        return _write(_into(target, task, _image_extension(task, image)), [image], _expected(task))
    if not link:
        raise AitaskError(f"task {task.id} has no output link", "NO_OUTPUT")
    request = urllib.request.Request(link, headers={"User-Agent": "aitask-client"})
    # Output links are signed: no API key goes with them (the link may point at another host, a CDN or S3).
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=connection.tls_context()))
    try:
        response = opener.open(request, timeout=connection.timeout)
    except urllib.error.HTTPError as error:
        raise AitaskError(
            f"the output link of task {task.id} answered HTTP {error.code}", f"HTTP_{error.code}"
        ) from None
    except OSError as error:
        raise Unavailable(f"the output link of task {task.id} could not be read: {error}", "UNAVAILABLE") from None
    with response:
        extension = _EXTENSIONS.get(response.headers.get_content_type()) or mimetypes.guess_extension(
            response.headers.get_content_type()
        )
        chunks = iter(lambda: response.read(CHUNK), b"")
        return _write(_into(target, task, extension or ""), chunks, _expected(task))


def _image_extension(task: Task, image: bytes) -> str:
    """An inline image's extension: from the stored copy's content type, else from its first bytes."""
    if task.output and task.output.content_type in _EXTENSIONS:
        return _EXTENSIONS[task.output.content_type]
    if image.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return ".webp"
    return ".png"


def _expected(task: Task) -> str:
    return task.output.sha256 if task.output else ""


def _into(target: Path, task: Task, extension: str) -> Path:
    """`target`, or `<task id><extension>` inside it when it is a directory."""
    return target / f"{task.id}{extension}" if target.is_dir() else target


def _write(target: Path, chunks: Iterable[bytes], expected_sha256: str) -> Path:
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as partial:
        try:
            for chunk in chunks:
                digest.update(chunk)
                partial.write(chunk)
        except BaseException:
            os.unlink(partial.name)
            raise
    if expected_sha256 and digest.hexdigest() != expected_sha256:
        os.unlink(partial.name)
        raise OutputMismatch(f"downloaded bytes have SHA-256 {digest.hexdigest()}, expected {expected_sha256}")
    shutil.move(partial.name, target)
    return target
