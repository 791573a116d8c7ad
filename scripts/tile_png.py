# Tile PNG images into one grid (rows given as comma-separated file lists), with numpy only:
#   /usr/bin/python3 scripts/tile_png.py OUT.png a.png,b.png,c.png d.png,e.png,f.png
# (used for the docs grids of synthetic sets; 8-bit RGB/RGBA PNGs). PNG I/O: real_grid.py.
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from real_grid import read_png, write_png  # noqa: E402

out, rows = sys.argv[1], [r.split(",") for r in sys.argv[2:]]
img = np.concatenate([np.concatenate([read_png(f) for f in r], 1) for r in rows], 0)
write_png(out, img)
