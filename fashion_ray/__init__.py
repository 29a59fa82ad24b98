"""fashion-ray: distributed labelling of fashion imagery on Ray.

The package is laid out the way data flows through a labelling run:
storage (URIs, listing, atomic writes) -> media (decode) -> models (bundles, predictors)
-> stages (Ray Data callables) -> pipeline (the Ray Data plan, resources) -> formats
(Arrow schema, Parquet/COCO shards) -> run (manifest, summary).
"""

__version__ = "0.1.0"
