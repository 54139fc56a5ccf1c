"""How much clipsan reads from a dataset it was handed, written once (no torch, no PIL: the command line reads it).

Data downloaded from the web is untrusted input: a tiny PNG can declare ten
thousand pixels a side, a manifest cell can hold a whole file, a row can point
at ``/etc/passwd``. These bounds keep every reader's cost proportional to data
that can be useful to a CLIP model.
"""

from __future__ import annotations

# Images are refused from their header above this many pixels (8192 x 8192): above
# any camera's photo (a 61 MP full-frame sensor is 9504 x 6336 = 60.2 M), far below
# what decodes in gigabytes. ``--max-image-pixels`` changes it.
MAX_IMAGE_PIXELS = 8192 * 8192

# Pillow refuses images above twice its own MAX_IMAGE_PIXELS (89,478,485) before
# clipsan sees their size, so clipsan's limit cannot usefully be set higher.
PILLOW_REFUSES_ABOVE = 2 * 89_478_485

# A caption longer than this is not a caption (a pasted page or file) and its pair is
# skipped as `oversized_caption`; CLIP keeps 77 tokens, a few hundred characters.
MAX_CAPTION_CHARS = 1 << 16

# Nothing larger is read as one caption: a CSV field (the csv module's field limit)
# or a webdataset / img2dataset .txt or .json sidecar.
MAX_CAPTION_FILE_BYTES = 1 << 24

# A report clipsan wrote and is handed back as input (purify --scan-report) is read whole, up to this
# size: a scan report holds a few kilobytes per model.
MAX_REPORT_BYTES = 1 << 24
