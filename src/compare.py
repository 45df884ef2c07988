"""python src/compare.py PATH... : one HTML report comparing run folders; see --help and the README.

Plain argparse, not Hydra: it reads run folders and composes no config.
"""

from seglab.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
