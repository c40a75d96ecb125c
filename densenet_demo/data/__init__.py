"""Images in: safe decoding and transforms (``images``), folders, zips and uploads checked into labelled files
(``datasets``), safe zip extraction (``archives``), and the built-in example dataset (``examples``)."""
