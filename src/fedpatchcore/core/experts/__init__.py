"""Logical-defect experts beside PatchCore: what to fit, from which statistics, how they score and fuse.

PatchCore compares each patch with the nearest normal patch anywhere, so a missing part (bare
background is normal somewhere) or a part in the wrong one of several identical places passes
unseen. The experts here know where things belong and how many there are:

    descriptors  patch features projected (public seeded map), pooled per image and per grid cell
    gaussian     Gaussians from sums that merge exactly (n, Σx, Σxxᵀ, and Ledoit-Wolf's extra two)
    kmeans       k-means by Lloyd rounds whose per-cluster counts and sums merge exactly
    model        the global, position and composition experts of a category: site statistics,
                 fitted experts, their scores and coarse maps
    fitting      the protocol sites and server run to fit them (one site: the centralized baseline)
    fusion       z-normalisation on good validation images, fusion rules, fused maps

Fitted per site and federated by sufficient statistics (``federation`` sends them beside the
coresets); ``scoring`` scores test images with them and fuses; ``tuning`` chooses each
category's rule on its validation split. Imports: ``common``, ``data``, ``features``, ``coreset``,
``banks``, ``privacy`` (stages before this one); nothing here imports torch's training, Kedro or Flower.
"""
