SUMMARY = "scanside appliance image for a Jetson Orin"
DESCRIPTION = "Read-only root file system with the scanside daemon, its \
               configuration and factory model, ONNX Runtime with TensorRT, and RAUC for A/B \
               updates. Site data and the site configuration live on the data partition."
HOMEPAGE = "https://git.example.invalid/scanside"
BUGTRACKER = "https://git.example.invalid/scanside/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image

COMPATIBLE_MACHINE = "(tegra234)"

IMAGE_FEATURES += "read-only-rootfs"
IMAGE_INSTALL += "packagegroup-core-boot \
                  scanside \
                  scanside-config \
                  scanside-model-brats-synth-unet \
                  rauc \
                  tegra-redundant-boot"

# Only the health check may mark a boot good: the stock L4T service that
# verifies every boot is masked (see rauc-tegra-backend).
ROOTFS_POSTPROCESS_COMMAND += "scanside_mask_l4t_verify"
scanside_mask_l4t_verify() {
    install -d ${IMAGE_ROOTFS}${sysconfdir}/systemd/system
    ln -sf /dev/null ${IMAGE_ROOTFS}${sysconfdir}/systemd/system/nv-l4t-bootloader-config.service
}
