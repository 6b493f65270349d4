"""Scoring: the calibrated scorer, its calibration and the one output filter shared by every stage."""
