SUMMARY = "scanside factory model: brats-synth-unet (3D U-Net, BraTS labels)"
DESCRIPTION = "The model bundle the image ships (manifest, ONNX, golden case), \
               run until a signed model is installed over the air and again after a rollback."
SECTION = "misc"

require recipes-scanside/scanside/scanside.inc

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/scanside/models/brats-synth-unet/golden
    install -m 0644 ${S}/models/brats-synth-unet/manifest.toml ${D}${datadir}/scanside/models/brats-synth-unet/
    install -m 0644 ${S}/models/brats-synth-unet/model.onnx ${D}${datadir}/scanside/models/brats-synth-unet/
    install -m 0644 ${S}/models/brats-synth-unet/golden/input.npy ${D}${datadir}/scanside/models/brats-synth-unet/golden/
}

FILES:${PN} += "${datadir}/scanside/models"
