"""Time the quick recipe as the Train tab launches it: wall time from launch to the first
in-training evaluation with mean meta-train success >= 0.9, and the final numbers.

    rm -rf data/cache   # to include making the data, as on a fresh page
    MUJOCO_GL=egl .venv/bin/python scripts/time_quick_recipe.py runs/quick-measure
"""
import json, subprocess, sys, time
from pathlib import Path

run = Path(sys.argv[1])
cmd = [sys.executable, "-m", "cmrl", "recipe", "--name", "quick", "--run-dir", str(run),
       "--no-progress"]
t0 = time.time()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
seen, first90, data_done = 0, None, None
while proc.poll() is None:
    time.sleep(1.0)
    st = run / "status.json"
    if data_done is None and st.exists():
        try:
            if json.loads(st.read_text()).get("phase") == "offline":
                data_done = time.time() - t0
        except ValueError:
            pass
    m = run / "metrics.jsonl"
    if m.exists():
        lines = m.read_text().splitlines()
        for line in lines[seen:]:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            succ = [v for k, v in r.items() if k.startswith("eval_train_success/")]
            if succ:
                mean = sum(succ) / len(succ)
                print(f"{time.time() - t0:7.1f} s  step {r['step']:>5}  meta-train {mean:.2f}  "
                      + " ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in r.items()
                                 if k.startswith(("eval_train_success/", "eval_test_success/"))),
                      flush=True)
                if mean >= 0.9 and first90 is None:
                    first90 = (time.time() - t0, r["step"])
        seen = len(lines)
out = proc.stdout.read()
print(out[-2000:])
print(json.dumps({"total_s": round(time.time() - t0, 1), "data_phase_s": data_done and round(data_done, 1),
                  "first_eval_at_or_above_0.9": first90, "rc": proc.returncode}))
