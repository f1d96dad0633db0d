"""Train a BERT teacher and scratch / KD students on SST, then score their word attributions (ICML 2023 §5.4).

    python scripts/distill_nlp.py                                 # embedded default: synthetic SST, tiny BERTs, CPU
    python scripts/distill_nlp.py --data path/to/trees --out runs/sst \\
        --teacher-layers 12 --student-layers 3 6 --hidden-size 768 --heads 12 --intermediate-size 3072 \\
        --vocab-size 16000 --lr 1e-4 --seeds 0 1 2 --device cuda --amp
    python scripts/distill_nlp.py --data path/to/trees --teacher-init path/to/bert-base-uncased \\
        --teacher-lr 2e-5 --student-init teacher --student-layers 3 6 --device cuda --amp

Writes <out>/teacher, <out>/students/L<layers>-<scratch|kd>-s<seed> (Hugging Face folders with the tokenizer),
<out>/models.json, and (unless --no-eval) <out>/scores.{json,csv}, and prints the Table 5-style comparison.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdfast.cli.distill_nlp import main  # noqa: E402

if __name__ == "__main__":
    main()
