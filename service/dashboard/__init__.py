"""The dashboard: a single page (HTML, ES modules, CSS and a vendored Chart.js) served by the API at ``/``.

Plain files, no build step: the API serves them as they are from this package.
"""
