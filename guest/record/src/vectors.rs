//! Published known-answer vectors, as hex. Each set names its source.
//! The guest's self-check runs them inside the sandbox; this crate's tests
//! run them natively.

use alloc::vec::Vec;

/// Decodes lowercase or uppercase hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// McGrew-Viega GCM specification, Test Case 4 (AES-128) and 16 (AES-256).
pub const GCM_TC4_KEY: &str = "feffe9928665731c6d6a8f9467308308";
pub const GCM_TC4_IV: &str = "cafebabefacedbaddecaf888";
pub const GCM_TC4_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
pub const GCM_TC4_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
pub const GCM_TC4_CT: &str = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091";
pub const GCM_TC4_TAG: &str = "5bc94fbc3221a5db94fae95ae7121a47";
pub const GCM_TC16_KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
pub const GCM_TC16_IV: &str = "cafebabefacedbaddecaf888";
pub const GCM_TC16_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
pub const GCM_TC16_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
pub const GCM_TC16_CT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
pub const GCM_TC16_TAG: &str = "76fc6ece0f4e1768cddf8853bb2d551b";
// RFC 8439 section 2.8.2.
pub const CHACHA_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
pub const CHACHA_NONCE: &str = "070000004041424344454647";
pub const CHACHA_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
pub const CHACHA_PT: &str = "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a204966204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73637265656e20776f756c642062652069742e";
pub const CHACHA_CT: &str = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116";
pub const CHACHA_TAG: &str = "1ae10b594f09e26a7e902ecbd0600691";
// RFC 4231 test cases 2 and 4.
pub const RFC4231_2_KEY: &str = "4a656665";
pub const RFC4231_2_DATA: &str = "7768617420646f2079612077616e7420666f72206e6f7468696e673f";
pub const RFC4231_2_SHA256: &str =
    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
pub const RFC4231_2_SHA384: &str = "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649";
pub const RFC4231_4_KEY: &str = "0102030405060708090a0b0c0d0e0f10111213141516171819";
pub const RFC4231_4_DATA: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
pub const RFC4231_4_SHA256: &str =
    "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b";
pub const RFC4231_4_SHA384: &str = "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb";
// RFC 8448 section 3 (simple 1-RTT handshake, TLS_AES_128_GCM_SHA256): application
// traffic secrets, their keys and IVs, and the first protected records.
pub const RFC8448_SERVER_AP_SECRET: &str =
    "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";
pub const RFC8448_SERVER_AP_KEY: &str = "9f02283b6c9c07efc26bb9f2ac92e356";
pub const RFC8448_SERVER_AP_IV: &str = "cf782b88dd83549aadf1e984";
pub const RFC8448_CLIENT_AP_SECRET: &str =
    "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
pub const RFC8448_CLIENT_AP_KEY: &str = "17422dda596ed5d9acd890e3c63f5051";
pub const RFC8448_CLIENT_AP_IV: &str = "5b78923dee08579033e523d9";
pub const RFC8448_CLIENT_APPDATA_SEQ0_RECORD: &str = "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";
pub const RFC8448_SERVER_NST_SEQ0_RECORD: &str = "17030300de3a6b8f90414a97d6959c3487680de5134a2b240e6cffac116e95d41d6af8f6b580dcf3d11d63c758db289a015940252f55713e061dc13e078891a38efbcf5753ad8ef170ad3c7353d16d9da773b9ca7f2b9fa1b6c0d4a3d03f75e09c30ba1e62972ac46f75f7b981be63439b2999ce13064615139891d5e4c5b406f16e3fc181a77ca475840025db2f0a77f81b5ab05b94c01346755f69232c86519d86cbeeac87aac347d143f9605d64f650db4d023e70e952ca49fe5137121c74bc2697687e248746d6df353005f3bce18696129c8153556b3b6c6779b37bf15985684f";
pub const RFC8448_SERVER_NST_SEQ0_INNER: &str = "040000c90000001efad6aac502000000b22c035d829359ee5ff7af4ec900000000262a6494dc486d2c8a34cb33fa90bf1b0070ad3c498883c9367c09a2be785abc55cd226097a3a982117283f82a03a143efd3ff5dd36d64e861be7fd61d2827db279cce145077d454a3664d4e6da4d29ee03725a6a4dafcd0fc67d2aea70529513e3da2677fa5906c5b3f7d8f92f228bda40dda721470f9fbf297b5aea617646fac5c03272e970727c621a79141ef5f7de6505e5bfbc388e93343694093934ae4d3570008002a00040000040016";
pub const RFC8448_SERVER_APPDATA_SEQ1_RECORD: &str = "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";
