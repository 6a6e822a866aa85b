"""The PDF-notes pipeline: PDFs in, study notes out, on the whole dramatiq_turbo stack.

``python -m examples.pdf_notes FILE_OR_URL...`` makes notes for your PDFs;
``examples.pdf_notes.worker`` is the worker module for ``dramatiq``;
``python -m examples.pdf_notes.loadtest`` compares the pipeline with its
naive twin.
"""
