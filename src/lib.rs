pub fn y() { oauth_pep_core::x() }
