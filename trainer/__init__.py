"""Training: the four MiMo-VL pre-training stages and MORL (no Dagster, no Beam; see DESIGN.md section 1)."""
