"""Medical imaging: DICOM reading (modality LUT, windowing, frames, spacing) without patient identifiers."""
