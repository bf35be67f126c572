"""Write a single-layer OCI image archive that `ctr images import` takes, from a rootfs tar or from files.

The real test nodes cannot pull from public registries, so the images their pods need before anything
else exists (the pod sandbox's pause image, the Debian base that mmdebstrap made) are assembled here
from local bytes. Layers stay uncompressed: they never cross a network, and gzip on two cores would
cost more than the disk space it saves.

    python3 oci_image.py --name localhost/nim-pause:1 --file pause=/tmp/pause --entrypoint /pause -o out.tar
    python3 oci_image.py --name localhost/nim-base:bookworm --rootfs base.tar --cmd /bin/bash -o out.tar
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def layer_from_files(files: dict[str, Path], out: Path) -> None:
    """A layer holding each file at its path, root-owned and executable (binaries are all we add)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in sorted(files.items()):
            info = tar.gettarinfo(str(source), arcname=name.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            info.mtime = 0
            with source.open("rb") as handle:
                tar.addfile(info, handle)


def write_archive(
    *, name: str, layer: Path, out: Path, entrypoint: list[str], cmd: list[str], env: list[str], user: str
) -> str:
    """Write the OCI archive and return the manifest digest; the layer file is moved into it."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = Path(tmp)
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_digest = _sha256_file(layer)
        layer_size = layer.stat().st_size
        shutil.move(str(layer), blobs / layer_digest)

        def blob(data: dict[str, Any]) -> tuple[str, int]:
            raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
            digest = hashlib.sha256(raw).hexdigest()
            (blobs / digest).write_bytes(raw)
            return digest, len(raw)

        config: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env, "User": user},
            # Uncompressed, so the diff id is the layer's own digest.
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }
        if entrypoint:
            config["config"]["Entrypoint"] = entrypoint
        if cmd:
            config["config"]["Cmd"] = cmd
        config_digest, config_size = blob(config)
        manifest_digest, manifest_size = blob(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{config_digest}", "size": config_size},
                "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}],
            }
        )
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": f"sha256:{manifest_digest}",
                    "size": manifest_size,
                    # containerd names the image from the first; other tools read the second.
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        (root / "index.json").write_text(json.dumps(index))
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        with tarfile.open(out, "w") as tar:
            for entry in ("oci-layout", "index.json", "blobs"):
                tar.add(root / entry, arcname=entry)
    return f"sha256:{manifest_digest}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="image reference, e.g. localhost/nim-pause:1")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rootfs", type=Path, help="an uncompressed tar of the whole filesystem")
    source.add_argument("--file", action="append", default=[], help="PATH_IN_IMAGE=HOST_FILE (repeatable)")
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument(
        "--env", action="append", default=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    parser.add_argument("--user", default="")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    layer = args.output.with_suffix(".layer.tmp")
    if args.rootfs:
        shutil.copyfile(args.rootfs, layer)
    else:
        layer_from_files({k: Path(v) for k, v in (f.split("=", 1) for f in args.file)}, layer)
    digest = write_archive(
        name=args.name,
        layer=layer,
        out=args.output,
        entrypoint=args.entrypoint,
        cmd=args.cmd,
        env=args.env,
        user=args.user,
    )
    print(f"{args.name} {digest} -> {args.output}")


if __name__ == "__main__":
    main()
