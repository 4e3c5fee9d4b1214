"""The model card: one self-contained HTML page (and its data as JSON) that says how a model does on a split,
for whom, how well its probabilities are calibrated, where it looks, and what data and code made it.

- :mod:`cxr.card.content`: what the card says, computed from a split's predictions (typed, no HTML);
- :mod:`cxr.card.provenance`: what is known about the model (lineage, data statistics, the gate's record);
- :mod:`cxr.card.figures` and :mod:`cxr.card.page`: the page (inline SVG, embedded PNGs, no script, no
  request leaves the file);
- :mod:`cxr.card.write`: ``cxr report``: inference, then the above, written to a folder and optionally
  logged to the model's MLflow run.
"""
