#!/bin/bash
# The whole pipeline on your own data: a tomogram and a labelled sub-volume of the same size.
set -euo pipefail
rockseg convert scan.nc image.zarr                        # or scan.tif, slices/, scan.raw --shape Z,Y,X --dtype uint16
rockseg convert labels.tif labels.zarr
rockseg tile image.zarr labels.zarr -o tiles.zarr --dims 3 --size 48 --phases 0=pore,1=clay,2=quartz,3=pyrite
rockseg train tiles.zarr -o model.pt --dims 3 --arch unet --base-channels 16 --max-minutes 60
rockseg predict image.zarr -m model.pt -o pred.zarr --block 128
rockseg stitch pred.zarr -o final.zarr
rockseg score final.zarr labels.zarr --json > score.json
