"""Self-supervised pretraining of the course's ResNet-18 encoder (notebooks 02-04).

Every method pretrains the SAME encoder (:func:`prostate_course.models.resnet18_encoder`) on the
training split's images only, and writes it as a checkpoint that the label-efficiency protocol
(:mod:`prostate_course.protocol`) fine-tunes and probes. One concern per module:

- :mod:`.losses` - contrastive losses on two views: NT-Xent (SimCLR), DCL, DCLW;
- :mod:`.views` - contrastive views of bpMRI slices, batched on the training device (random
  resized crop, flips, per-channel intensity scale and gamma, noise, blur, cutout);
- :mod:`.contrastive` - the encoder + projection model, the two-view training step for
  :func:`prostate_course.train.fit`, quick pretraining and encoder checkpoints (notebook 03);
- :mod:`.diagnostics` - alignment, uniformity, feature spread, a collapse check;
- :mod:`.sweep` - the batch-size x temperature sweep and linear contrasts of arms (paired);
- :mod:`.embeddings` - frozen features and their t-SNE map;
- :mod:`.metadata` - exam metadata for notebook 04: PI-RADS labels with a confidence,
  reader agreement, clinical values standardised on the training exams, resampled reports;
- :mod:`.metadata_losses` - y-Aware InfoNCE and the conditional contrastive loss with PI-RADS
  confidence (notebook 04);
- :mod:`.pretexts` - restoration pretexts after Models Genesis and masked-patch corruption
  (notebook 02);
- :mod:`.restoration` - the restoration model (U-Net decoder over the encoder) and its step
  (notebook 02).

The one-slice-per-exam batch sampler lives with the other samplers
(:class:`prostate_course.samplers.OnePerExamBatches`); the figures in
:mod:`prostate_course.viz.embeddings`.
"""
