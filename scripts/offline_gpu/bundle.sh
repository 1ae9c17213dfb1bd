#!/usr/bin/env bash
# Pack what a GPU machine without internet (PyTorch installed, Python 3.12, x86-64) needs to train
# and bench this project: the pure-Python and binary wheels it lacks, Meta-World with blank textures
# (physics bit-identical, rendering plain; 1.7 MB instead of 37), the offline datasets, and the
# MiniLM goal embeddings of every task's texts (the 88 MB model stays here). Output: .device/
# (git-ignored), about 15 MB. Then on that machine: bash scripts/offline_gpu/session.sh
#
#   bash scripts/offline_gpu/bundle.sh            # DATA="data/ml4-expert-v1 data/ml10-expert-v1"
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/ml4-expert-v1 data/ml10-expert-v1}
B=.device
mkdir -p $B/whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $B/whl mujoco==3.3.0 metaworld==3.1.1 minari==0.5.4 gymnasium==1.4.0 farama-notifications==0.0.6 \
  mtrl==1.0.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 packaging==26.4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd $tmp && unzip -q "$OLDPWD"/$B/whl/metaworld-*.whl 'metaworld/*')
rm $B/whl/metaworld-*.whl
$PY - "$tmp/metaworld/assets" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
for p in Path(sys.argv[1]).rglob("*"):  # same size, one colour: MuJoCo loads them, physics unchanged
    if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
        im = Image.open(p)
        mode = im.mode if im.mode in ("RGB", "RGBA", "L") else "RGB"
        Image.new(mode, im.size, (128,) * len(mode)).save(p, "PNG" if p.suffix.lower() == ".png" else "JPEG")
PYEOF
tar cf - -C $tmp metaworld | xz -T0 -9 > $B/metaworld-blank-textures.tar.xz
for d in $DATA; do
  [ -f "$d/cmrl_dataset.json" ] || { echo "no dataset at $d" >&2; exit 2; }
  tar cf - "$d" | xz -T0 -6 > "$B/$(basename "$d").tar.xz"
done
HF_HUB_OFFLINE=1 $PY - $B/minilm_table.npz <<'PYEOF'
import sys
from cmrl.envs.tasks import GOAL_TEXTS, UNSEEN_GOAL_TEXTS, all_env_names, goal_texts
from cmrl.nets.text_encoders import get_text_encoder, save_embedding_table
texts = set()
for task in set(all_env_names()) | set(GOAL_TEXTS):
    texts.update(goal_texts(task))
    texts.update(UNSEEN_GOAL_TEXTS.get(task, ()))
save_embedding_table(get_text_encoder("minilm", verbose=False), texts, sys.argv[1])
print(f"{len(texts)} goal texts embedded")
PYEOF
du -sh $B
