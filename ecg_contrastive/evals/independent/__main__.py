"""python -m ecg_contrastive.evals.independent --workdir RUN [--records 400] [--seed 0] [--out DIR] [--step N]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub


def main(argv: list[str] | None = None) -> None:
  from ecg_contrastive.errors import UserError, one_line
  from ecg_contrastive.evals.independent import check

  parser = argparse.ArgumentParser(description=check.__doc__.split("\n\n")[0])
  parser.add_argument(
    "--workdir", required=True, help="a training workdir (config.json, checkpoints/)"
  )
  parser.add_argument("--records", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--out", default=None, help="root of the simulator's folders (default: beside the TFDS data)"
  )
  parser.add_argument(
    "--step", type=int, default=None, help="checkpoint step (default: the newest intact)"
  )
  args = parser.parse_args(argv)
  logging.basicConfig(
    level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
  )
  logging.getLogger("ecg_contrastive").setLevel(logging.INFO)
  try:
    result = check.run_check(args.workdir, args.records, args.seed, args.out, args.step)
  except (UserError, FileNotFoundError, ValueError) as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  print(result["table"])


if __name__ == "__main__":
  main()
