"""The served cascade: one photo labelled now, by the same bundle and stage code as the batch job.

    cascade.py       one request as a one-row batch: decode, a stage over a Serve batch, the Parquet row
    app.py           Ray Serve deployments (an HTTP ingress, one deployment per model stage) and the builder
    label_studio.py  Label Studio's ML backend protocol over the same rows
The web page (assets/web/index.html) is served by the ingress at "/".
"""
