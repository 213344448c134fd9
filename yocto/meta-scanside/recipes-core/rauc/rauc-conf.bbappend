# The image's RAUC configuration: the compatible string, the A/B root file
# systems of the Tegra redundant layout, the keyring, and the boot backend that
# the post-boot health check (scanside-healthcheck.service) marks good through.
FILESEXTRAPATHS:prepend:tegra234 := "${THISDIR}/files:"

SRC_URI:append:tegra234 = " file://system.conf file://rauc-tegra-backend"
# The fleet's RAUC CA certificate, set in local.conf (not part of this layer).
RAUC_KEYRING_FILE:tegra234 ?= "ca.cert.pem"

do_install:append:tegra234() {
    install -d ${D}${libexecdir}/rauc
    install -m 0755 ${UNPACKDIR}/rauc-tegra-backend ${D}${libexecdir}/rauc/
}

FILES:${PN}:append:tegra234 = " ${libexecdir}/rauc"
RDEPENDS:${PN}:append:tegra234 = " tegra-redundant-boot"
