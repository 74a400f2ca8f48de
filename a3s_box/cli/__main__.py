from a3s_box.cli.main import main

main()
