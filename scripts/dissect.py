"""Network dissection of a model's layers over Broden: `python scripts/dissect.py --help`.

With no arguments: a random-init torchvision resnet18 at layer4 over the small synthetic Broden, into
./dissect_out. Under torchrun the images are sharded across ranks and rank 0 writes the results.
"""
from kdfast.dissect.cli import run

if __name__ == "__main__":
    run()
