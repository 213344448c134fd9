SUMMARY = "scanside: DICOM edge appliance daemon beside an MRI scanner"
DESCRIPTION = "Receives DICOM from the scanner, gates brain MR series, segments \
               the tumour with a 3D U-Net (ONNX Runtime with TensorRT on the Jetson), measures \
               volumes across visits, writes DICOM SEG/SR results and forwards them upstream."
SECTION = "console/network"

require scanside.inc
require scanside-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# The binary; the units, the user and the directories (systemd/ in the tree).
SYSTEMD_SERVICE:${PN} = "scanside.service scanside-healthcheck.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/scanside --no-create-home --shell /sbin/nologin scanside"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/scanside.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/scanside.socket ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/scanside-healthcheck.service ${D}${systemd_system_unitdir}/
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/sysusers.d/scanside.conf ${D}${nonarch_libdir}/sysusers.d/
    install -m 0644 ${S}/systemd/tmpfiles.d/scanside.conf ${D}${nonarch_libdir}/tmpfiles.d/
    # The data partition's mount point (the root file system is read-only).
    install -d -m 0750 ${D}${localstatedir}/lib/scanside
}

FILES:${PN} += "${systemd_system_unitdir} ${nonarch_libdir}/sysusers.d ${nonarch_libdir}/tmpfiles.d ${localstatedir}/lib/scanside"

# onnxruntime is loaded at run time ([inference] ort_library), not linked.
RDEPENDS:${PN} += "onnxruntime"
