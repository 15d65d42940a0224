"""Write the offline demo's data: every sum a + b with 0 <= a, b <= 99, split 9,000 train / 1,000 held out.

python data/make_sums.py      # rewrites data/sumas.txt and data/sumas_test.txt (deterministic)
"""

import random
from pathlib import Path

pairs = [(a, b) for a in range(100) for b in range(100)]
random.Random(1234).shuffle(pairs)


def blocks(items):
    return "\n###\n".join(f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: {a + b}" for a, b in items) + "\n"


here = Path(__file__).parent
(here / "sumas.txt").write_text(blocks(pairs[:9000]), encoding="utf-8")
(here / "sumas_test.txt").write_text(blocks(pairs[9000:]), encoding="utf-8")
