"""Network dissection of a model's layers over Broden: `python scripts/dissect.py --help`.

With no arguments: the synthetic world's default trained model at layer4 over the world's synthetic Broden,
into ./runs/dissect. Under torchrun the images are sharded across ranks and rank 0 writes the results.
"""
from kdfast.dissect.cli import run

if __name__ == "__main__":
    run()
