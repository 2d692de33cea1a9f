"""Read-only query code: ``Searcher`` answers text, image and more-like-this queries with ``Hit``s."""

from search.searcher import PROMPT_TEMPLATES, Filters, Hit, Searcher, SearchError, format_timestamp

__all__ = ["Filters", "Hit", "Searcher", "SearchError", "PROMPT_TEMPLATES", "format_timestamp"]
