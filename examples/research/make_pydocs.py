"""Build the real-text corpus of the data-size trend: the Python 3.11 documentation's reST sources.

Source: the Debian package ``python3.11-doc`` (``/usr/share/doc/python3.11/html/_sources``, 497 files),
text nobody on this project wrote. Documents are shuffled with seed 0 and written one per line as
``{"text": ...}`` so ``--corpus-tokens N`` takes the same first N tokens at every size.

Usage: python make_pydocs.py SOURCES_DIR OUT.jsonl
  (get SOURCES_DIR with: apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb pydoc)
"""
import json
import random
import sys
from pathlib import Path


def main(src: str, out: str) -> None:
    files = sorted(Path(src).rglob("*.txt"))
    random.Random(0).shuffle(files)
    with open(out, "w", encoding="utf-8") as fh:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                fh.write(json.dumps({"text": text}) + "\n")
    print(f"{len(files)} documents -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
