"""Write the offline demo's data: every sum a + b with 0 <= a, b <= 99, split 9,000 train / 1,000 held out; and
preference pairs for the DPO demo (recipes/tiny_math_dpo.py) from the first 3,000 training sums.

python data/make_sums.py      # rewrites data/sumas.txt, data/sumas_test.txt, data/sumas_pares.jsonl (deterministic)
"""

import json
import random
from pathlib import Path

pairs = [(a, b) for a in range(100) for b in range(100)]
random.Random(1234).shuffle(pairs)


def blocks(items):
    return "\n###\n".join(f"Pregunta: ¿Cuánto es {a} + {b}?\nRespuesta: {a + b}" for a, b in items) + "\n"


here = Path(__file__).parent
(here / "sumas.txt").write_text(blocks(pairs[:9000]), encoding="utf-8")
(here / "sumas_test.txt").write_text(blocks(pairs[9000:]), encoding="utf-8")


def without_carry(a: int, b: int) -> int:
    """The sum a model that has not learned carrying writes: each digit's sum mod 10 (27 + 35 -> 52)."""
    return ((a // 10 + b // 10) % 10) * 10 + (a % 10 + b % 10) % 10 + (100 if a // 10 + b // 10 >= 10 else 0)


def rejected(a: int, b: int) -> int:
    wrong = without_carry(a, b)
    return wrong if wrong != a + b else a + b + 1  # no carry to forget: off by one


with open(here / "sumas_pares.jsonl", "w", encoding="utf-8") as f:
    for a, b in pairs[:3000]:
        record = {"prompt": f"¿Cuánto es {a} + {b}?", "chosen": str(a + b), "rejected": str(rejected(a, b))}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
