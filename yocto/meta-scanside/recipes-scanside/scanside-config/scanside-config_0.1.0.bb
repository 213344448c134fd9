SUMMARY = "scanside configuration defaults and trusted model-signing keys"
DESCRIPTION = "The read-only configuration layers of the image (default.toml and \
               device.toml), the JSON schema, and the minisign public keys that model bundles \
               must be signed with. The site layer lives on the data partition."
SECTION = "config"

require recipes-scanside/scanside/scanside.inc

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/scanside/keys
    install -m 0644 ${S}/firmware-config/default.toml ${D}${datadir}/scanside/
    install -m 0644 ${S}/firmware-config/device.toml ${D}${datadir}/scanside/
    install -m 0644 ${S}/firmware-config/scanside.schema.json ${D}${datadir}/scanside/
    install -m 0644 ${S}/firmware-config/keys/*.pub ${D}${datadir}/scanside/keys/
}

FILES:${PN} += "${datadir}/scanside"
