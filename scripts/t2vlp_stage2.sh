#!/usr/bin/env bash
# T2VLP stage 2 (T2VLP's start_fusion.sh; configs/t2vlp_stage2.yaml): the fusion encoder trained by MLM,
# prefix LM, VTM with hard negatives and alignment on the frozen stage-1 backbone (--freeze_backbone): 10 epochs,
# global batch 32, lr 1e-5; zero-shot MSR-VTT after every epoch, raw and re-ranked (top 32).
#   INIT_MODEL: the stage-1 checkpoint; the corpus, evaluation and optional variables of scripts/t2vlp_stage1.sh.
T2VLP_STAGE=2
source "$(dirname "$0")/t2vlp_stage1.sh"
