"""Bokeh documents, one ``make_document`` per page."""
