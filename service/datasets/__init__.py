"""Datasets: the built-in ones (``builtin``), reading uploaded files into arrays (``files``), the catalogue of
uploads with their records and stored arrays (``catalogue``), and loading a job's data for training
(``loading``)."""
