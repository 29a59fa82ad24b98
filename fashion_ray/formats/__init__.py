"""Output formats: the Arrow schema, Parquet/COCO shards, RLE masks."""
