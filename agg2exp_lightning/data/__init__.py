"""Data: the TotalSegmentator v2 reader, manifests, the synthetic cohort and the data module."""
