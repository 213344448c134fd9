//! The trend picture for the neurosurgeon: volume over time per region with the
//! progression threshold (from the nadir) drawn and this visit marked, beside one
//! axial key slice (the one with the most tumour) with the segmentation outlined.
//! Drawn by hand into an RGB raster (no font or plotting library to install on a
//! device): a DICOM Secondary Capture for viewers that cannot show SEG, a PNG and
//! an SVG for the HTTP API.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::{copy_patient_study, put, ModelId};
use crate::measure::history::{days_between, Thresholds, Visit};
use crate::measure::Region;

pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const WIDTH: usize = 1024;
pub const HEIGHT: usize = 512;
const CHART_W: usize = 640;

/// Colours per region, in region order (whole tumour first).
const COLOURS: [[u8; 3]; 6] = [
    [230, 60, 50],
    [240, 200, 40],
    [60, 190, 90],
    [40, 190, 230],
    [200, 90, 220],
    [255, 140, 0],
];

/// One axial slice: grey values and labels, row-major, `w` x `h`, with its pixel
/// size in mm (rows, columns) and its position along z.
pub struct KeySlice {
    pub w: usize,
    pub h: usize,
    pub grey: Vec<f32>,
    pub labels: Vec<u8>,
    pub pixel_mm: [f64; 2],
    pub z_mm: f64,
}

/// The axial slice of the series with the most voxels of `values` (the whole
/// tumour), shown in radiological convention (patient left on the image right,
/// anterior up). None when there is no tumour.
pub fn key_slice(vol: &crate::volume::Volume, labels: &[u8], values: &[u8]) -> Option<KeySlice> {
    use crate::volume::resample;
    let g = resample::Grid::of(vol);
    let resampled = crate::measure::axial_grid(&g).map(|to| {
        (
            resample::resample(&vol.data, &g, &to, resample::Interp::Linear, 0.0),
            resample::resample_labels(labels, &g, &to),
            to,
        )
    });
    let (grey, lab, ag) = match &resampled {
        Some((a, b, to)) => (a.as_slice(), b.as_slice(), *to),
        None => (vol.data.as_slice(), labels, g),
    };
    let [ns, nr, nc] = ag.dims;
    let plane = nr * nc;
    let best = (0..ns)
        .map(|s| {
            (
                lab[s * plane..(s + 1) * plane]
                    .iter()
                    .filter(|l| values.contains(l))
                    .count(),
                s,
            )
        })
        .max()?;
    if best.0 == 0 {
        return None;
    }
    let s = best.1;
    // Columns toward patient left (+x), rows toward posterior (+y).
    let (flip_c, flip_r) = (ag.axes[2][0] < 0.0, ag.axes[1][1] < 0.0);
    let mut out_g = Vec::with_capacity(plane);
    let mut out_l = Vec::with_capacity(plane);
    for r in 0..nr {
        let rr = if flip_r { nr - 1 - r } else { r };
        for c in 0..nc {
            let cc = if flip_c { nc - 1 - c } else { c };
            let i = s * plane + rr * nc + cc;
            out_g.push(grey[i]);
            out_l.push(lab[i]);
        }
    }
    Some(KeySlice {
        w: nc,
        h: nr,
        grey: out_g,
        labels: out_l,
        pixel_mm: [ag.spacing[1], ag.spacing[2]],
        z_mm: ag.position([s as f64, 0.0, 0.0])[2],
    })
}

pub struct Trend<'a> {
    /// All visits of the patient, ordered by date, this one included.
    pub visits: &'a [Visit],
    pub this_study: &'a str,
    pub regions: &'a [Region],
    pub thresholds: Thresholds,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize, bg: [u8; 3]) -> Canvas {
        Canvas {
            w,
            h,
            px: bg.iter().copied().cycle().take(w * h * 3).collect(),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line `t` pixels thick; `dash` > 0 draws dashes of that many pixels.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), t: i64, dash: usize, c: [u8; 3]) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            if dash > 0 && (i / dash) % 2 == 1 {
                continue;
            }
            let f = i as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
            let (x, y) = (x.round() as i64, y.round() as i64);
            self.rect(x - t / 2, y - t / 2, x + (t - 1) / 2, y + (t - 1) / 2, c);
        }
    }

    /// Text in the 8x8 bitmap font, `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY[(ch as usize).min(127)];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (x + (k as i64 * 8 + col) * scale, y + row as i64 * scale);
                        self.rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
        }
    }
}

fn date_label(d: &str) -> String {
    if d.len() == 8 {
        format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8])
    } else {
        "?".into()
    }
}

/// Chart geometry shared by the raster and the SVG: x and y in pixels per visit.
struct Plot {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    vmax: f64,
    days: Vec<f64>,
}

impl Plot {
    fn new(t: &Trend) -> Plot {
        let first = t
            .visits
            .first()
            .map(|v| v.study_date.clone())
            .unwrap_or_default();
        let days: Vec<f64> = t
            .visits
            .iter()
            .enumerate()
            .map(|(i, v)| days_between(&first, &v.study_date).unwrap_or(i as f64))
            .collect();
        let mut vmax = t
            .visits
            .iter()
            .flat_map(|v| v.volumes_ml.values().copied())
            .fold(0.0, f64::max);
        if let Some(th) = threshold(t) {
            vmax = vmax.max(th);
        }
        Plot {
            x0: 80.0,
            x1: CHART_W as f64 - 30.0,
            y0: 60.0,
            y1: HEIGHT as f64 - 90.0,
            vmax: nice_ceiling(vmax.max(1.0) * 1.1),
            days,
        }
    }

    fn x(&self, i: usize) -> f64 {
        let span = self.days.last().copied().unwrap_or(0.0) - self.days[0];
        if span <= 0.0 {
            (self.x0 + self.x1) / 2.0
        } else {
            self.x0 + (self.days[i] - self.days[0]) / span * (self.x1 - self.x0)
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.y1 - v / self.vmax * (self.y1 - self.y0)
    }

    /// A region's points (x, y, is this visit) over the visits that have it.
    fn points(&self, t: &Trend, key: &str) -> Vec<(f64, f64, bool)> {
        t.visits
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.volumes_ml
                    .get(key)
                    .map(|&ml| (self.x(i), self.y(ml), v.study_uid == t.this_study))
            })
            .collect()
    }
}

fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&x| x >= v)
        .unwrap_or(10.0 * p)
}

/// The whole tumour's progression threshold: nadir before this visit x (1 + pct).
fn threshold(t: &Trend) -> Option<f64> {
    let i = t.visits.iter().position(|v| v.study_uid == t.this_study)?;
    t.visits[..i]
        .iter()
        .filter_map(|v| v.volumes_ml.get("whole_tumour").copied())
        .min_by(f64::total_cmp)
        .map(|n| n * (1.0 + t.thresholds.progression_pct / 100.0))
}

/// The picture as RGB pixels, WIDTH x HEIGHT.
pub fn render(t: &Trend, key: Option<&KeySlice>) -> Vec<u8> {
    let mut c = Canvas::new(WIDTH, HEIGHT, [16, 16, 20]);
    let (fg, grid) = ([235, 235, 235], [60, 60, 70]);
    let p = Plot::new(t);
    c.text(16, 14, "Tumour volume (mL) over visits", 2, fg);
    for k in 0..=4 {
        let v = p.vmax * k as f64 / 4.0;
        let y = p.y(v);
        c.line((p.x0, y), (p.x1, y), 1, 0, grid);
        c.text(8, y as i64 - 4, &format!("{v:>7.1}"), 1, fg);
    }
    c.line((p.x0, p.y0), (p.x0, p.y1), 2, 0, fg);
    c.line((p.x0, p.y1), (p.x1, p.y1), 2, 0, fg);
    if let Some(th) = threshold(t) {
        let y = p.y(th);
        c.line((p.x0, y), (p.x1, y), 2, 6, [255, 80, 80]);
        c.text(
            p.x0 as i64 + 6,
            y as i64 - 12,
            &format!(
                "progression: +{:.0}% from nadir",
                t.thresholds.progression_pct
            ),
            1,
            [255, 80, 80],
        );
    }
    for (i, v) in t.visits.iter().enumerate() {
        let x = p.x(i);
        if v.study_uid == t.this_study {
            c.line((x, p.y0), (x, p.y1), 1, 3, fg);
            let tx = (x as i64 - 40).min(CHART_W as i64 - 84);
            c.text(tx, p.y0 as i64 - 12, "this visit", 1, fg);
        }
        let tx = (x as i64 - 40).min(CHART_W as i64 - 84);
        c.text(
            tx,
            p.y1 as i64 + 8 + 10 * (i % 2) as i64,
            &date_label(&v.study_date),
            1,
            fg,
        );
    }
    for (k, r) in t.regions.iter().enumerate() {
        let col = COLOURS[k % COLOURS.len()];
        let pts = p.points(t, &r.key);
        for w in pts.windows(2) {
            c.line((w[0].0, w[0].1), (w[1].0, w[1].1), 2, 0, col);
        }
        for &(x, y, this) in &pts {
            let s = if this { 6 } else { 4 };
            let (x, y) = (x as i64, y as i64);
            c.rect(x - s, y - s, x + s, y + s, col);
        }
        // Legend.
        let ly = HEIGHT as i64 - 50 + 14 * (k / 2) as i64;
        let lx = 20 + 300 * (k % 2) as i64;
        c.rect(lx, ly, lx + 10, ly + 8, col);
        c.text(lx + 16, ly, &r.name, 1, fg);
    }
    if let Some(ks) = key {
        draw_key_slice(&mut c, ks, t.regions);
    } else {
        c.text(
            CHART_W as i64 + 40,
            HEIGHT as i64 / 2,
            "no tumour slice",
            2,
            fg,
        );
    }
    c.px
}

fn draw_key_slice(c: &mut Canvas, ks: &KeySlice, regions: &[Region]) {
    let (x0, y0, side) = (CHART_W + 8, 40usize, 368usize);
    // Keep the aspect ratio in mm.
    let (wmm, hmm) = (ks.w as f64 * ks.pixel_mm[1], ks.h as f64 * ks.pixel_mm[0]);
    let scale = side as f64 / wmm.max(hmm);
    let (dw, dh) = ((wmm * scale) as usize, (hmm * scale) as usize);
    let mut sorted: Vec<f32> = ks.grey.clone();
    sorted.sort_by(f32::total_cmp);
    let (lo, hi) = (
        sorted[sorted.len() / 100],
        sorted[sorted.len() * 99 / 100].max(sorted[sorted.len() / 100] + 1e-3),
    );
    let at = |x: usize, y: usize| {
        let sx = ((x as f64 + 0.5) / dw as f64 * ks.w as f64) as usize;
        let sy = ((y as f64 + 0.5) / dh as f64 * ks.h as f64) as usize;
        sy.min(ks.h - 1) * ks.w + sx.min(ks.w - 1)
    };
    for y in 0..dh {
        for x in 0..dw {
            let g = ((ks.grey[at(x, y)] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
            c.set((x0 + x) as i64, (y0 + y) as i64, [g as u8; 3]);
        }
    }
    // Outlines: a display pixel whose source label is in the region and has a
    // neighbour that is not. Sub-regions first, the whole tumour on top.
    for (k, r) in regions.iter().enumerate().rev() {
        let col = COLOURS[k % COLOURS.len()];
        let inside = |x: usize, y: usize| r.values.contains(&ks.labels[at(x, y)]);
        for y in 1..dh.saturating_sub(1) {
            for x in 1..dw.saturating_sub(1) {
                if inside(x, y)
                    && !(inside(x - 1, y)
                        && inside(x + 1, y)
                        && inside(x, y - 1)
                        && inside(x, y + 1))
                {
                    c.set((x0 + x) as i64, (y0 + y) as i64, col);
                }
            }
        }
    }
    let fg = [235, 235, 235];
    c.text(x0 as i64, 14, "Key slice (axial)", 2, fg);
    // Radiological convention: the patient's right on the image left.
    let below = (y0 + dh + 6) as i64;
    c.text(x0 as i64, below, "R", 1, fg);
    c.text((x0 + dw - 8) as i64, below, "L", 1, fg);
    c.text(
        x0 as i64 + 24,
        below,
        &format!("z = {:.1} mm", ks.z_mm),
        1,
        fg,
    );
}

/// The key-slice panel (right part) of a rendered picture, as PNG.
pub fn key_panel_png(rgb: &[u8]) -> anyhow::Result<Vec<u8>> {
    let w = WIDTH - CHART_W;
    let mut panel = Vec::with_capacity(w * HEIGHT * 3);
    for y in 0..HEIGHT {
        panel.extend_from_slice(&rgb[(y * WIDTH + CHART_W) * 3..(y * WIDTH + WIDTH) * 3]);
    }
    png(&panel, w, HEIGHT)
}

/// PNG bytes of an RGB raster.
pub fn png(rgb: &[u8], w: usize, h: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w as u32, h as u32);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e.write_header()?;
        wr.write_image_data(rgb)?;
    }
    Ok(out)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as SVG (vectors and text), with the key slice as an embedded PNG.
pub fn svg(t: &Trend, key_png: Option<&[u8]>) -> String {
    let p = Plot::new(t);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"#101014\"/>\n<text x=\"16\" y=\"30\" fill=\"#ebebeb\" font-size=\"18\">Tumour volume (mL) over visits</text>\n"
    );
    for k in 0..=4 {
        let v = p.vmax * k as f64 / 4.0;
        s += &format!(
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#3c3c46\"/><text x=\"70\" y=\"{:.1}\" fill=\"#ebebeb\" font-size=\"11\" text-anchor=\"end\">{v:.1}</text>\n",
            p.x0,
            p.x1,
            p.y(v) + 4.0,
            y = p.y(v)
        );
    }
    if let Some(th) = threshold(t) {
        s += &format!(
            "<line class=\"threshold\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ff5050\" stroke-width=\"2\" stroke-dasharray=\"6 6\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#ff5050\" font-size=\"11\">progression: +{:.0}% from nadir ({th:.2} mL)</text>\n",
            p.x0,
            p.x1,
            p.x0 + 6.0,
            p.y(th) - 6.0,
            t.thresholds.progression_pct,
            y = p.y(th)
        );
    }
    for (i, v) in t.visits.iter().enumerate() {
        let x = p.x(i);
        if v.study_uid == t.this_study {
            s += &format!(
                "<line class=\"this-visit\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ebebeb\" stroke-dasharray=\"3 3\"/><text x=\"{x:.1}\" y=\"{:.1}\" fill=\"#ebebeb\" font-size=\"11\" text-anchor=\"middle\">this visit</text>\n",
                p.y0,
                p.y1,
                p.y0 - 6.0
            );
        }
        s += &format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" fill=\"#ebebeb\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
            p.y1 + 16.0 + 12.0 * (i % 2) as f64,
            date_label(&v.study_date)
        );
    }
    for (k, r) in t.regions.iter().enumerate() {
        let [cr, cg, cb] = COLOURS[k % COLOURS.len()];
        let col = format!("#{cr:02x}{cg:02x}{cb:02x}");
        let pts: Vec<String> = p
            .points(t, &r.key)
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        s += &format!(
            "<polyline class=\"region\" data-region=\"{}\" points=\"{}\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\"/>\n",
            esc(&r.key),
            pts.join(" ")
        );
        for (i, v) in t.visits.iter().enumerate() {
            if let Some(&ml) = v.volumes_ml.get(&r.key) {
                s += &format!(
                    "<circle class=\"point\" data-region=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{col}\"><title>{} {}: {ml:.2} mL</title></circle>\n",
                    esc(&r.key),
                    p.x(i),
                    p.y(ml),
                    if v.study_uid == t.this_study { 6 } else { 4 },
                    esc(&r.name),
                    date_label(&v.study_date)
                );
            }
        }
        s += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"8\" fill=\"{col}\"/><text x=\"{}\" y=\"{}\" fill=\"#ebebeb\" font-size=\"11\">{}</text>\n",
            20 + 300 * (k % 2),
            HEIGHT - 50 + 14 * (k / 2),
            36 + 300 * (k % 2),
            HEIGHT - 42 + 14 * (k / 2),
            esc(&r.name)
        );
    }
    if let Some(png) = key_png {
        s += &format!(
            "<image x=\"{CHART_W}\" y=\"0\" width=\"{}\" height=\"{HEIGHT}\" href=\"data:image/png;base64,{}\"/>\n",
            WIDTH - CHART_W,
            base64(png)
        );
    }
    s + "</svg>\n"
}

/// Standard base64 (RFC 4648), for the SVG's embedded picture and audit queries.
pub(crate) fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for ch in b.chunks(3) {
        let n = (ch[0] as u32) << 16
            | (*ch.get(1).unwrap_or(&0) as u32) << 8
            | *ch.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= ch.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

pub struct ScObject<'a> {
    pub first: &'a InMemDicomObject,
    pub sop_uid: &'a str,
    pub series_uid: &'a str,
    pub series_number: u32,
    pub created: (&'a str, &'a str),
    pub model: &'a ModelId,
}

/// The picture as a Secondary Capture in the source's study.
pub fn secondary_capture(
    rgb: Vec<u8>,
    sc: &ScObject,
) -> anyhow::Result<FileDicomObject<InMemDicomObject>> {
    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(sc.first, &mut o);
    super::put_identity(
        &mut o,
        SECONDARY_CAPTURE,
        sc.sop_uid,
        sc.created,
        "OT",
        sc.series_uid,
        sc.series_number,
        "scanside tumour volume trend",
    );
    put(&mut o, tags::LATERALITY, VR::CS, "");
    put(&mut o, tags::PATIENT_ORIENTATION, VR::CS, "");
    super::put_equipment(&mut o, sc.model);
    // SC Equipment: workstation-generated.
    put(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::CONTENT_DATE, VR::DA, sc.created.0);
    put(&mut o, tags::CONTENT_TIME, VR::TM, sc.created.1);
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    for (tag, v) in [
        (tags::SAMPLES_PER_PIXEL, 3u16),
        (tags::PLANAR_CONFIGURATION, 0),
        (tags::ROWS, HEIGHT as u16),
        (tags::COLUMNS, WIDTH as u16),
        (tags::BITS_ALLOCATED, 8),
        (tags::BITS_STORED, 8),
        (tags::HIGH_BIT, 7),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(rgb),
    ));
    super::into_file(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_examples() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(23.4), 25.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
    }
}
