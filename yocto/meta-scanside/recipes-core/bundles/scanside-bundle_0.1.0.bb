SUMMARY = "RAUC update bundle of the scanside image"
DESCRIPTION = "A verity-format RAUC bundle of scanside-image for the A/B root \
               file systems; signed with RAUC_KEY_FILE/RAUC_CERT_FILE (set per fleet in \
               local.conf, never in this layer) and checked against the image's keyring."
HOMEPAGE = "https://git.example.invalid/scanside"
BUGTRACKER = "https://git.example.invalid/scanside/issues"
SECTION = "images"
LICENSE = "MIT"
# The bundle class takes its input from the image; there is nothing to fetch.
SRC_URI = ""

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "scanside-jetson-orin"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "scanside appliance"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "scanside-image"
RAUC_SLOT_rootfs[fstype] = "ext4"
