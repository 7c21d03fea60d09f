"""The inference engine and the bundles it runs: bundle loader, batched engine, Grad-CAM, frontal-view gate, ``monai.bundle run`` entry points."""
