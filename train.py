"""Entry point kept at the top of the repository so that `python train.py pruner=mp sparsity=0.9` works."""

from prunelab.cli.train import main

if __name__ == "__main__":
    main()
