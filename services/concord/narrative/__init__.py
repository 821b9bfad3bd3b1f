"""The narrative worker: clinical text (notes, pathology reports) read into facts (issue 18)."""
