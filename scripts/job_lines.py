"""Lines of the app's job handling (docs/ray.md): app/jobs.py and app/job_backends.py split into the
launch checks and display helpers (specs, LIMITS, validation, argv building, estimates, device
text) and job handling (everything else: records, status, queue, watcher, stop, processes, Ray).

    python3 scripts/job_lines.py            # the working tree
    python3 scripts/job_lines.py 45cc47f    # at a commit (before the Ray backend: 45cc47f)
"""
import ast
import subprocess
import sys
from pathlib import Path

FILES = ("app/jobs.py", "app/job_backends.py")
CHECKS = {"TrainSpec", "RecipeSpec", "recipe_choices", "_smoke_from_env", "_env_cap",
          "device_summary", "format_seconds", "_sentence", "_whole", "cuda_available", "_cap",
          "limits", "run_config", "build_argv", "validate", "_benchmark", "_device",
          "validate_recipe", "build_recipe_argv", "estimate", "_dataset"}


def split(src: str) -> tuple[int, int, int]:
    """(all lines, launch checks and display, the RayJobs class)."""
    def span(node) -> int:
        first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        return node.end_lineno - first + 1

    checks = ray = 0
    for node in ast.parse(src).body:
        inner = node.body if isinstance(node, ast.ClassDef) and node.name == "JobManager" else []
        checks += sum(span(n) for n in [node, *inner]
                      if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in CHECKS)
        ray += span(node) if isinstance(node, ast.ClassDef) and node.name == "RayJobs" else 0
    return len(src.splitlines()), checks, ray


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    root = Path(__file__).resolve().parents[1]
    total = [0, 0, 0]
    for f in FILES:
        if rev:
            r = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, capture_output=True, text=True)
            src = r.stdout if r.returncode == 0 else ""
        else:
            src = (root / f).read_text() if (root / f).exists() else ""
        n, c, ray = split(src)
        total = [total[0] + n, total[1] + c, total[2] + ray]
        print(f"{f}: {n} lines, launch checks and display {c}, job handling {n - c}"
              + (f" (RayJobs {ray})" if ray else ""))
    print(f"together: {total[0]} lines, launch checks and display {total[1]}, job handling "
          f"{total[0] - total[1]}, of which the Ray backend {total[2]}")


if __name__ == "__main__":
    main()
