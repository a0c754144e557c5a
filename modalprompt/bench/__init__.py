"""Generated benchmarks and base models built here: tiny random models and toy tasks (`tiny`), mini-CoIN
(`minicoin`) and the small pretrained base it runs on (`pretrain`)."""
