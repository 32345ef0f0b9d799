"""Pin the production overlay's images to the digests a build produced.

    python -m deploy.pin_images METADATA_DIR [OVERLAY_KUSTOMIZATION]

`make docker-build-<name>` writes BuildKit's metadata (`--metadata-file`) to METADATA_DIR/<name>.json; its
`containerimage.digest` is what the registry serves after `docker push` of that build. Each
`- name: aitask-<name>` entry of the overlay's `images:` gets a `digest:` line (replaced if there is one),
so kustomize renders `registry/aitask-<name>:tag@sha256:...`. Text is edited in place: comments stay.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from deploy.dockerfile import ROOT

PROD_KUSTOMIZATION = ROOT / "deploy" / "k8s" / "overlays" / "prod" / "kustomization.yaml"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def build_digests(metadata_dir: Path) -> dict[str, str]:
    """Image name (aitask-<target>) → digest, from every metadata file in `metadata_dir`."""
    digests = {}
    for path in sorted(metadata_dir.glob("*.json")):
        digest = json.loads(path.read_text()).get("containerimage.digest", "")
        if not DIGEST.match(digest):
            raise ValueError(f"{path}: no containerimage.digest (built without --metadata-file?)")
        digests[f"aitask-{path.stem}"] = digest
    return digests


def pin(text: str, digests: dict[str, str]) -> str:
    """The kustomization `text` with a digest line in each named image's entry."""
    for name, digest in digests.items():
        entry = re.compile(rf"(^  - name: {re.escape(name)}\n(?:    (?!digest:)\S.*\n)*)(    digest: \S+\n)?", re.M)
        if not entry.search(text):
            raise ValueError(f"no `- name: {name}` entry under images:")
        line = f"    digest: {digest}\n"
        text = entry.sub(lambda match: str(match.group(1)) + line, text, count=1)  # noqa: B023 - used at once
    return text


def main(argv: list[str]) -> int:
    """Rewrite the overlay; exit 2 on bad usage."""
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    kustomization = Path(argv[1]) if len(argv) == 2 else PROD_KUSTOMIZATION
    digests = build_digests(Path(argv[0]))
    kustomization.write_text(pin(kustomization.read_text(), digests))
    for name, digest in digests.items():
        print(f"{name}: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
