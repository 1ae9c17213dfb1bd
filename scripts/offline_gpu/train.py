"""`python -m cmrl ...` on a machine without the text encoder's weights: the goal embeddings come
from a table the real encoder wrote on another machine (bundle.sh), bit for bit the same vectors.

    python scripts/offline_gpu/train.py TABLE.npz train --agent cmrl --text-encoder minilm ...
"""
import sys

from cmrl.cli import main
from cmrl.nets.text_encoders import use_embedding_table

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    use_embedding_table(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
